"""The matched-convergence rule's constants and its statement in words (no torch: the CLI's help imports it).

Chosen by measurement on noisy non-IID digits runs (docs/landscapes.md, "Matched convergence").
"""

SMOOTH_WINDOW = 5  # saved rounds in the centred moving median
MIN_DROP = 0.1  # the level must lie at least this fraction of the untrained loss below it
DISPARITY = 2.0  # matched rounds of two groups further apart than this factor are flagged
EARLY_FRACTION = 0.1  # a matched round in the first 10% of training is flagged

# the rule in words: flatfl report --help, the report page and docs/landscapes.md say the same
MATCH_RULE = (
    f"each run is measured at the first saved round from which the centred moving median of its loss on the "
    f"analysis data (over {SMOOTH_WINDOW} saved rounds) stays at or below the level until the last round "
    "considered and whose own loss is at or below it -- where it has settled, not a transient dip; the default "
    f"level is the highest final moving median among the runs. A level less than {MIN_DROP:.0%} below a run's "
    "untrained (round-0) loss is refused "
    f"(no verdict: training did not reach it; use --match-acc). Matched rounds of two groups more than "
    f"{DISPARITY:g}x apart, or within the first {EARLY_FRACTION:.0%} of training, are said in words and that "
    "comparison gets no verdict unless the level was given with --match-loss"
)
