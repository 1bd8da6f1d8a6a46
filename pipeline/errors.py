"""One exception type for mistakes a user can fix: the CLI prints it as a single clear line."""


class UserError(Exception):
    """Bad input (label file, config key, video folder, ...). The message names file/row/key."""
