"""Solutions to the exercises of chapter 8 (the reproduction)."""
import statistics


def my_fold_summary(runs):
    """runs: {fold: [mIoU of each run]} -> (mean per fold, population std per fold, mean of the fold means)."""
    folds = sorted(runs)
    means = [statistics.fmean(runs[f]) for f in folds]
    stds = [statistics.pstdev(runs[f]) for f in folds]  # np.std: ddof = 0
    return means, stds, statistics.fmean(means)


suspects = {"b", "c"}  # 5-shot below 1-shot everywhere; a std of 0.0 over 5 seeded runs
