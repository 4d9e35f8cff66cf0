"""What the row kernel knows about a term: plain numbers, no types from the rest of anydistill.

The losses side (`anydistill.losses.registry.kernel_terms`) turns each objective term into a
`KernelTerm`; `divergence_rows.rows_loss_and_grad` reads nothing else. This module imports
neither torch nor triton, so the losses side can name the codes without loading a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kind codes (compile-time in the kernel, which spells them as literals). From JSD on, a kind
# needs a second sweep over the vocabulary for its value.
NONE, FKL, RKL, TAID, JSD, TVD, SKL, SRKL = range(8)
ZERO = -1  # identically zero value and gradient (e.g. skl with alpha = 1): no launch
CE = -2  # hard-label cross-entropy at T = 1; it rides on the last launch


@dataclass(frozen=True)
class KernelTerm:
    """One term of the loss as the kernel launches it."""

    code: int  # one of the codes above
    weight: float
    temperature: float = 1.0  # ignored for CE
    k_par: float = 0.0  # the kind's own parameter: beta (jsd), alpha (skl, srkl), t (taid)
    log_wp: float = 0.0  # log of the teacher's weight in the mixture (jsd, skl, srkl)
    log_wq: float = 0.0  # log of the student's weight in the mixture
