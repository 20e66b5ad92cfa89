"""Run and autoscale a pool of local analyzer processes behind a distributor (``logdist pool``)."""
