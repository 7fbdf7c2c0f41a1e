#!/bin/sh
# A stand-in pilot: reports the AutoPyFactory environment, then "works" for MIN..MAX seconds.
min=${1:-5}; max=${2:-10}
span=$((max - min + 1))
secs=$((min + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % span))
echo "pilot $APFCID of $FACTORYQUEUE (factory $APFFID, GTAG $GTAG) working ${secs}s"
sleep "$secs"
