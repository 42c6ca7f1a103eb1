"""The capacity law of effective data: effD = L tanh(F log_{1/4} GMSE)^C over the GMSE of a
format's backward (gradient) quantizer, as `compscale.capacity` fits rho over its forward parts.

Fitted two-stage, to the effD values of a `unified-effd` fit, each weighted by the bootstrap
spread of its log (`capacity.fit_capacity`, one shared L, F, C), and only where the cells
determine it: at least MIN_FORMATS backward formats of at least `capacity.MIN_DISTINCT_GMSE`
distinct GMSEs. Otherwise it says "not identified" and why, never a number.
"""

from __future__ import annotations

from collections.abc import Mapping

from compscale import capacity
from compscale.laws import NOT_IDENTIFIED, FitResult

FAMILY = "backward"
MIN_FORMATS = 4  # three capacity-law parameters and one degree of freedom


def effective_data_capacity(
    result: FitResult, gmse: Mapping[str, float]
) -> capacity.CapacityFit | str:
    """The capacity law of the effD values `result` fitted, against `gmse` (format -> GMSE of its
    backward quantizer), or a "not identified (why)" line."""
    eff_d = result.fitted.eff_d
    names = [name for name in eff_d if name in gmse and result.identified(f"eff_d[{name}]")]
    distinct = {round(float(gmse[name]), 12) for name in names}
    if len(names) < MIN_FORMATS or len(distinct) < capacity.MIN_DISTINCT_GMSE:
        return (
            f"{NOT_IDENTIFIED} ({len(names)} backward format(s) with a GMSE, of {len(distinct)} "
            f"distinct GMSE(s); the effD capacity law needs >= {MIN_FORMATS} formats of "
            f">= {capacity.MIN_DISTINCT_GMSE} distinct GMSEs)"
        )
    columns = [result.names.index(f"eff_d[{name}]") for name in names]
    draws = result.bootstrap_samples[:, columns] if result.bootstrap > 1 else None
    return capacity.fit_capacity(
        names,
        [eff_d[name] for name in names],
        [[(FAMILY, float(gmse[name]))] for name in names],
        rho_samples=draws,
        groups=(capacity.SHARED,),
    )


def backward_gmse(name: str) -> float | None:
    """GMSE of format `name`'s backward quantizer from the format grammar; None when it has no
    backward part, several (no one GMSE), or does not parse."""
    from compscale.gmse import components

    try:
        parts = [part.gmse for part in components(name) if part.direction == "backward"]
    except ValueError:
        return None
    return float(parts[0]) if len(parts) == 1 else None
