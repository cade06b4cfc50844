// probe-ebpf is a binary crate for the BPF target; this empty library lets
// probe-agent name it as a build dependency (aya-build), so cargo rebuilds
// the agent when the kernel programs change.
#![no_std]
