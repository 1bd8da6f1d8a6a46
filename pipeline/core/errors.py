"""One exception type for mistakes a user can fix: the CLI prints it as a single clear line.

Also the columns of the failures tables (the probe stage's `*.failures.csv`, a feature store's
`failures.csv`): one row per video that failed, with the stage and the message.
"""

FAILURE_COLUMNS = ["id", "path", "stage", "error"]


class UserError(Exception):
    """Bad input (label file, config key, video folder, ...). The message names file/row/key."""
