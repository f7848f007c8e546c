"""The documentation's numbers: every table of results in README.md and docs/ is a generated block, rewritten
from the committed files under experiments/results/ by `tumorclf docs` (`blocks`, `tables`)."""
