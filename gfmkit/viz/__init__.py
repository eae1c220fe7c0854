"""Figures (matplotlib) and structure views (nglview) from stores and run directories."""
