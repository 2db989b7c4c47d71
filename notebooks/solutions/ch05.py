"""Solutions to the exercises of chapter 5 (episodic training)."""


def my_learning_rate(step, base_lr, milestones, gamma):
    """The rate of the update at `step` (counted from 0) under MultiStepLR stepped once per iteration:
    base_lr times gamma for every milestone already reached (m <= step)."""
    passed = sum(1 for m in milestones if m <= step)
    return base_lr * gamma ** passed
