import pytest

from agent.procfs import (CpuTimes, TcpSegments, cpu_utilization, parse_meminfo, parse_proc_stat,
                          parse_snmp_tcp, read_netns_tcp, tcp_window)

STAT = "cpu  100 5 50 800 20 1 2 0 0 0\ncpu0 50 2 25 400 10 0 1 0 0 0\nintr 1\n"
SNMP = ("Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets "
        "CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n"
        "Tcp: 1 200 120000 -1 10 5 0 0 2 1000 2000 30 0 1 0\n")


def test_proc_stat_and_utilisation():
    a = parse_proc_stat(STAT)
    assert a == CpuTimes(978, 820)
    b = CpuTimes(a.total + 100, a.idle + 25)
    assert cpu_utilization(a, b) == pytest.approx(0.75)
    assert cpu_utilization(None, b) is None
    assert cpu_utilization(b, a) is None  # went backwards


@pytest.mark.parametrize("text", ["", "cpu0 1 2 3 4\n", "cpu  1 x 3 4\n", "cpu  1 2\n"])
def test_proc_stat_garbage(text):
    with pytest.raises(ValueError, match="/proc/stat"):
        parse_proc_stat(text)


def test_meminfo():
    assert parse_meminfo("MemTotal: 1000 kB\nMemFree: 1 kB\nMemAvailable: 250 kB\n") == (1024000, 256000)
    with pytest.raises(ValueError, match="MemAvailable"):
        parse_meminfo("MemTotal: 1000 kB\n")
    with pytest.raises(ValueError, match="bad line"):
        parse_meminfo("MemTotal: lots kB\nMemAvailable: 1 kB\n")


def test_snmp_tcp():
    c = parse_snmp_tcp(SNMP)
    assert c["OutSegs"] == 2000 and c["RetransSegs"] == 30 and c["MaxConn"] == -1
    with pytest.raises(ValueError, match="no Tcp"):
        parse_snmp_tcp("Ip: a\nIp: 1\n")
    with pytest.raises(ValueError, match="mismatch"):
        parse_snmp_tcp("Tcp: A B\nTcp: 1\n")


def test_tcp_window_sums_namespaces_seen_twice():
    prev = {1: TcpSegments(100, 1), 2: TcpSegments(50, 0), 3: TcpSegments(900, 9)}
    cur = {1: TcpSegments(300, 5), 2: TcpSegments(60, 1), 3: TcpSegments(10, 0), 4: TcpSegments(7, 7)}
    # ns 3 reset (skipped), ns 4 new (skipped)
    assert tcp_window(prev, cur) == (210, 5)
    assert tcp_window(None, cur) is None


def test_read_netns_tcp_against_fixture_proc(tmp_path):
    import os

    from agent.procfs import netns_key

    for pid in ("10", "12"):
        (tmp_path / pid / "net").mkdir(parents=True)
        (tmp_path / pid / "net" / "snmp").write_text(SNMP)
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "net").symlink_to(tmp_path / "10" / "net")  # same namespace as pid 10
    (tmp_path / "self").mkdir()
    (tmp_path / "13").mkdir()  # vanished process: no net directory
    got = read_netns_tcp(tmp_path)
    ino10 = os.stat(tmp_path / "10" / "net" / "snmp").st_ino
    ino12 = os.stat(tmp_path / "12" / "net" / "snmp").st_ino
    assert got == {ino10: TcpSegments(2000, 30), ino12: TcpSegments(2000, 30)}
    assert netns_key(tmp_path, 11) == netns_key(tmp_path, 10) == ino10
    assert netns_key(tmp_path, 13) is None


NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 5000000    4000    0    0    0     0          0         0   700000    3000    0    0    0     0       0          0
"""


def test_net_dev():
    from agent.procfs import parse_net_dev, read_netns_bytes

    assert parse_net_dev(NET_DEV) == {"lo": (1000, 1000), "eth0": (5000000, 700000)}
    with pytest.raises(ValueError, match="net/dev"):
        parse_net_dev("h1\nh2\n  eth0 1 2 3\n")


def test_read_netns_bytes_excludes_loopback(tmp_path):
    from agent.procfs import read_netns_bytes

    (tmp_path / "42" / "net").mkdir(parents=True)
    (tmp_path / "42" / "net" / "dev").write_text(NET_DEV)
    assert read_netns_bytes(tmp_path, 42) == (5000000, 700000)
    assert read_netns_bytes(tmp_path, 43) is None
