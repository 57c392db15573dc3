"""Fine-pruning: trainer-agnostic hooks, the Accelerate training loop, checkpoints, distillation."""
