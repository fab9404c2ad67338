# Decodes CDP frames with scapy's CDP layer, for scapy_test.go: reads one
# hex frame per line on stdin and prints one JSON object per frame with the
# header, scapy's own checksum of the PDU, and every TLV as scapy parsed it.
import json
import sys

from scapy.all import Ether, LLC, SNAP, conf  # noqa: F401 (binds the layers)
from scapy.contrib.cdp import CDPv2_HDR
from scapy.packet import Raw, Padding

conf.verb = 0
for line in sys.stdin:
    frame = bytes.fromhex(line.strip())
    pkt = Ether(frame)
    hdr = pkt.getlayer(CDPv2_HDR)
    if hdr is None:
        print(json.dumps({"error": "no CDPv2 header: " + pkt.summary()}))
        continue
    # scapy's own checksum: rebuild the PDU with the field left empty.
    redo = CDPv2_HDR(bytes(hdr))
    redo.cksum = None
    tlvs = []
    for m in hdr.msg:
        fields = {}
        for f in m.fields_desc:
            v = m.getfieldval(f.name)
            if isinstance(v, bytes):
                v = v.decode("latin-1")
            elif not isinstance(v, (int, str)):
                v = repr(v)
            fields[f.name] = v
        tlvs.append({"class": m.__class__.__name__, "fields": fields})
    leftover = hdr.getlayer(Raw) is not None or hdr.getlayer(Padding) is not None
    print(json.dumps({
        "vers": hdr.vers, "ttl": hdr.ttl, "cksum": hdr.cksum,
        "scapy_cksum": CDPv2_HDR(bytes(redo)).cksum,
        "odd_last_byte": bytes(hdr)[-1] if len(bytes(hdr)) % 2 else None,
        "tlvs": tlvs, "leftover": leftover,
    }))
