"""Bound algorithms: IBP, CROWN, CROWN-IBP (no operator-specific code here)."""
