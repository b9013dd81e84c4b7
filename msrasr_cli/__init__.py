"""The `msrasr` command's front end: argument parsing only.

It imports neither torch nor basicsr (nor `msrasr_arch`, whose import registers everything in BasicSR), so
`msrasr --help` and every subcommand's `--help` answer at once; a subcommand's body, in
``msrasr_arch.cli.<name>.run``, is imported only when it runs.
"""
