"""HTCondor plugins: Condor-G and local-pool pilot submission, batch status, and the schedd
interface they share. The bindings (``htcondor2``, ``classad2``) are imported only inside the
functions that talk to a pool or parse ClassAds, never at module import."""
