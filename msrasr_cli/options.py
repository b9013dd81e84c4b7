"""Arguments of `msrasr options`."""


def add_arguments(parser):
    actions = parser.add_subparsers(dest='action', metavar='ACTION')
    actions.required = True
    actions.add_parser('list', help='print the shipped option files, one per line')
    copy = actions.add_parser('copy', help='copy a shipped option file to edit it')
    copy.add_argument('name', help='a name from `msrasr options list` (the .yml may be left out)')
    copy.add_argument('dest', nargs='?', default='.', help='file or folder to copy to (default: the current folder)')
    copy.add_argument('--overwrite', action='store_true', help='replace an existing file')
