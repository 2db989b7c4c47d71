"""Solutions to the exercises of chapter 5 (episodic training)."""


def my_learning_rate(step, base_lr, milestones, gamma):
    """The rate of the update at `step` (counted from 0) under MultiStepLR stepped once per iteration:
    base_lr times gamma for every milestone already reached (m <= step)."""
    passed = sum(1 for m in milestones if m <= step)
    return base_lr * gamma ** passed


def my_training_step(model, optimizer, scheduler, batch):
    """One training step of PANet: the query's cross-entropy (255 ignored) + 1 x PAR, then
    zero_grad, backward, the SGD step and the scheduler's step (once per iteration). -> the loss."""
    import torch.nn.functional as F

    out = model(batch["support_images"], batch["support_fg"], batch["support_bg"], batch["query_images"])
    seg_loss = F.cross_entropy(out.logits.flatten(0, 1), batch["query_labels"].flatten(0, 1),  # (B*Q, 1+N, H, W)
                               ignore_index=255)
    loss = seg_loss + 1.0 * out.align_loss  # lambda = 1
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss
