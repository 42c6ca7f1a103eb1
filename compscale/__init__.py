"""compscale: the science library: representations, GMSE, scaling-law and capacity fits."""
