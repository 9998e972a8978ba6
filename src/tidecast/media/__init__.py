"""Media types and codec helpers shared by every pipeline stage."""
