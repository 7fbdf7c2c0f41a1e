"""Grid compute elements driven over HTTP (no HTCondor in between): the ARC CE REST interface."""
