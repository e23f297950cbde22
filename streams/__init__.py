"""Faust stream processors: GPU samples to priced cost windows to breakeven decisions."""
