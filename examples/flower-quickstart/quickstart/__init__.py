"""Flower's quickstart in PyTorch on scikit-learn's digits, with Trapdoor's mod and strategy."""
