"""Helpers shared by the command-line tools, the model classes and the datasets."""
