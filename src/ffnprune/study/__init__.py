"""Studies: methods x keep fractions x tasks x distillation x seeds, run cell by cell, resumably."""
