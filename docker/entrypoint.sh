#!/bin/sh
# The one entrypoint of the Tributary images (CPU and GPU). Configuration comes only from
# TRIBUTARY_* environment variables (see service/tributary_service/settings.py) and the flags
# below, exactly as on a workstation:
#
#   serve [FLAGS]                          -> tributary serve [FLAGS]        (the default)
#   index build|plan|add|verify [FLAGS]    -> tributary index ...
#   torchrun [TORCHRUN FLAGS] -m tributary_indexer.cli build ...   (distributed index build)
#   tributary SUBCOMMAND ...               -> the client CLI (attribute, batch, report, ...)
#   --FLAG ...                             -> tributary serve --FLAG ...
#   anything else                          -> run as given (sh, python, ... for debugging)
#
# tini (PID 1) forwards SIGTERM and reaps torchrun's children; exec keeps no shell in between.
set -eu

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve | index)
        exec tributary "$@"
        ;;
    torchrun | tributary)
        exec "$@"
        ;;
    -*)
        exec tributary serve "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
