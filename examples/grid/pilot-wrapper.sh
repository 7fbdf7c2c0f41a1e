#!/bin/sh
# A stand-in pilot wrapper for the example: a site ships its own (e.g. runpilot3-wrapper.sh).
echo "pilot on $(hostname) for queue ${FACTORYQUEUE:-?} (factory ${APFFID:-?})"
exec "$@"
