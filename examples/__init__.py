"""Example user models, each named on the command line by its module path."""
