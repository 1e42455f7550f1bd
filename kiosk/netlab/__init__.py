"""A network lab: real packets between real endpoints over an impaired link, reproducible from a seed.

This machine's kernel has no `netem` qdisc, so the impairment is applied in user space: the traffic
between network namespaces is routed through a TUN device whose reader delays, drops, reorders and
duplicates each packet as a link model says (`model.py`), and bandwidth is capped with the `tbf`
qdisc on the veth. See docs/netlab.md.

- `model.LinkModel`: what happens to each packet of one direction (loss, bursty loss, delay and
  jitter, reordering, duplication, blackouts, a rate cap), decided by a seeded random generator.
- `profiles.PROFILES`: clean, wifi, bad-wifi, thin-uplink, handover, udp-blocked.
- `forwarder.Impairer`: reads the TUN device, applies the models, writes the packets back.
- `lab.Lab`: the namespaces, veths, routes and qdiscs of a lab, and running commands in them.
"""
