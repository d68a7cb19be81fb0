"""Speech services shared by the embedded engine and by calls: recognition, synthesis, their models."""
