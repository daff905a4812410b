"""Run only by tests/experiment/test_lab_interruption.py (the name keeps pytest from collecting
it): holds a relay lab with every kind of fault and a service, prints what it made, and waits to
be interrupted."""

import json
import sys
import time

from experiment.lab import RelayLab, _expect


def test_hold_a_lab_until_interrupted():
    with RelayLab() as lab:
        lab.set_delay(20, 5)
        lab.set_loss(0.02)
        lab.set_rate("50mbit")
        lab.start_hogs(1)
        svc = lab.spawn(lab.server, sys.executable, "-m", "experiment.service", lab.server.ip4,
                        "7302")
        _expect(svc, "ready")
        print("HOLDING " + json.dumps({
            "netns": [lab.client.ns, lab.server.ns], "devs": [lab.client.dev, lab.server.dev],
            "pids": lab.pids()}), flush=True)
        time.sleep(120)
