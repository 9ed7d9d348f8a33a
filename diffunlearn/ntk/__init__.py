"""Building blocks of Fast-NTK unlearning (`diffunlearn.ntk.unlearn` is the entry point).

- `data`: every accepted form of a labelled set -> mini-batches `(images, labels)`, shape checks, set digests.
- `subset`: which parameters the NTK is taken over (the linear head, BatchNorm affine, a name pattern).
- `rows`: the rows of the linearised least-squares problem (features or Jacobians) and their sufficient statistics.
- `solve`: primal / dual ridge solves with Cholesky and jitter.
- `cache`: statistics of the full set D kept in memory and on disk.
"""
