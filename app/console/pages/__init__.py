"""One module per console page group; each gives its routes."""
