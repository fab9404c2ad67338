package fastpath

// The C sources live in bpf/; the Makefile's generate target sets
// BPF2GO_CC, BPF2GO_STRIP and BPF2GO_CFLAGS to the pinned clang.
//go:generate go tool bpf2go -tags linux -target bpfel -type pb_counter -type pb_counter_value -type pb_config -type pb_config_version -type pb_dhcp_port -type pb_dhcp_pool -type pb_dhcp_block -type pb_dhcp_class_key -type pb_dhcp_binding_key -type pb_dhcp_binding -type pb_dhcp_event -type pb_dhcp_pool_flags -type pb_dhcp_state -type pb_dhcp_event_type -type pb_vlan_port -type pb_vlan_member_key -type pb_vlan_member -type pb_vlan_station_key -type pb_vlan_station -type pb_vlan_station_mode -type pb_vlan_subnet_key -type pb_vlan_subnet -type pb_phone_mac_key phonePort ../../bpf/xdp_phone_port.c -- -I../../bpf -I../..
//go:generate go tool bpf2go -tags linux -target bpfel -no-global-types phoneEgress ../../bpf/tc_phone_egress.c -- -I../../bpf -I../..
