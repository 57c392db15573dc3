"""Task data: where the offline files live and how each task reads them."""
