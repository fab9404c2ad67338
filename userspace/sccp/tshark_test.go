package sccp

import (
	"fmt"
	"testing"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
)

// TestTshark: Wireshark's skinny dissector reads every message we encode
// without a malformed or warning mark, and shows the values we set.
func TestTshark(t *testing.T) {
	full := testRegister()
	full.BodyLen = RegisterFullBody
	full.ConfigVersion = "1700000000-0"
	short := testRegister()
	short.BodyLen = RegisterShortBody
	ack := &RegisterAck{KeepAliveInterval: 30, DateTemplate: "M/D/YA", SecondaryKeepAliveInterval: 60, MaxProtocolVersion: 22}
	type msg struct {
		fromPhone bool
		wire      []byte
		want      map[string]string
	}
	regWant := func(m *Register) map[string]string {
		w := map[string]string{
			"skinny.messageId": "1", "skinny.DeviceName": m.DeviceName,
			"skinny.stationIpAddr": m.StationIP.String(), "skinny.deviceType": fmt.Sprintf("0x%08x", m.DeviceType),
			"skinny.maxStreams": fmt.Sprint(m.MaxStreams),
		}
		if m.BodyLen >= RegisterShortBody {
			w["skinny.protocolVer"] = fmt.Sprint(m.ProtocolVersion)
		}
		if m.BodyLen >= RegisterLoadBody {
			w["skinny.macAddress"] = "00:1b:9e:26:63:69"
			w["skinny.maxNumberOfLines"] = fmt.Sprint(m.MaxLines)
		}
		return w
	}
	msgs := []msg{
		{true, full.AppendFrame(nil, Version22), regWant(full)},
		{false, ack.AppendFrame(nil, Version22), map[string]string{
			"skinny.messageId": "129", "skinny.keepAliveInterval": "30", "skinny.dateTemplate": "M/D/YA",
			"skinny.secondaryKeepAliveInterval": "60", "skinny.maxProtocolVer": "22"}},
		{false, AppendEmpty(nil, Version22, CapabilitiesReqID), map[string]string{"skinny.messageId": "155"}},
		{true, AppendEmpty(nil, Version22, KeepAliveID), map[string]string{"skinny.messageId": "0"}},
		{false, AppendEmpty(nil, Version22, KeepAliveAckID), map[string]string{"skinny.messageId": "256"}},
		{true, AppendEmpty(nil, Version22, UnregisterID), map[string]string{"skinny.messageId": "39"}},
		{false, (&UnregisterAck{}).AppendFrame(nil, Version22), map[string]string{"skinny.messageId": "280"}},
		{true, testRegister().AppendFrame(nil, VersionBasic), regWant(testRegister())},
		{true, short.AppendFrame(nil, VersionBasic), regWant(short)},
		{false, (&RegisterReject{Text: "Device Unknown"}).AppendFrame(nil, VersionBasic), map[string]string{
			"skinny.messageId": "157", "skinny.text": "Device Unknown"}},
	}
	conv := wiretest.NewTCPConversation(t, "10.0.0.10", 51000, "10.0.0.1", Port)
	for _, m := range msgs {
		conv.Send(m.fromPhone, m.wire)
	}
	fields := []string{"skinny.messageId"}
	seen := map[string]bool{"skinny.messageId": true}
	for _, m := range msgs {
		for k := range m.want {
			if !seen[k] {
				seen[k] = true
				fields = append(fields, k)
			}
		}
	}
	got := wiretest.Tshark(t, conv.Frames(), fields...)
	got = got[3:] // the handshake
	for i, m := range msgs {
		if p := got[i].Problems(); len(p) > 0 {
			t.Errorf("message %d: tshark: %q\n%s", i, p, wiretest.Verbose(t, conv.Frames()))
		}
		for k, v := range m.want {
			if g := got[i].One(t, k); g != v {
				t.Errorf("message %d: %s = %q, want %q", i, k, g, v)
			}
		}
	}
}
