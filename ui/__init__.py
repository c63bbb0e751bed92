"""What the user sees: the live progress line in the cell and the run summary."""
