"""Arguments of `msrasr profile`."""

def add_arguments(parser):
    parser.add_argument('-opt', dest='opt', nargs='*', metavar='FILE_OR_NAME',
                        help='option file(s) with a network_g block, or built-in configuration names (those printed '
                        'without -opt); default: all built-in configurations')
    parser.add_argument('--hr', default=None, metavar='WxH',
                        help='HR size the Mult-Adds refer to (default: the paper\'s 1024x720)')
    parser.add_argument('--paper', action='store_true',
                        help='every row of the paper\'s Tables 1, 3 and 4: its figures, ours (each built from the '
                        'shipped option file that trains it) and SwinIR\'s under the same count, with the ratios')
