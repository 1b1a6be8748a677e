"""The modelport command line."""
