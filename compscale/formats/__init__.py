"""Representations of weights (and activations): one grammar, torch ops with STE backward.

    fmt = parse("sp50+int4"); str(fmt) == "sp50+int4"; fmt.apply(weight, mask)

See docs/contracts.md ("Representations") for the interface and `grammar.GRAMMAR` for the strings.
"""

from compscale.formats.base import Component, Format, FormatError
from compscale.formats.grammar import GRAMMAR, STANDARD_FORMATS, parse

__all__ = ["GRAMMAR", "STANDARD_FORMATS", "Component", "Format", "FormatError", "parse"]
