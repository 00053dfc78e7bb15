"""Context learners. Importing this package registers every learner in `LEARNERS` (explicit imports, no
discovery by side effect elsewhere)."""

from trainables.learners import (  # noqa: F401
    cocoop,
    coop,
    e2e,
    maple,
    shared_attention,
    shared_separate,
    vpt,
)
