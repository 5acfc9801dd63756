"""The web dashboard (``jobsys dashboard``): queues, workers, delay levels and dead-letter
queues, live, over ``jobsys.ops``; needs the optional extra ``jobsys[dashboard]``."""
