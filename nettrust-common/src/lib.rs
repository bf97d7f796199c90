//! Types and constants shared by the nettrust daemon (userspace, feature `user`) and its eBPF
//! programs (`nettrust-ebpf`). Everything here is `#[repr(C)]` plain data without implicit
//! padding, so both sides agree on the bytes of every map key and value.
//!
//! The modules are private and re-exported here, so every item is named from the crate root
//! (`nettrust_common::FlowKey`); `host_table` and `inbound` are public modules of their own.
#![no_std]

mod capture;
mod events;
mod flow_records;
mod flows;
pub mod host_table;
mod hosts;
pub mod inbound;
mod live;
mod maps;
mod patterns;
mod scopes;
mod verdicts;

pub use capture::*;
pub use events::*;
pub use flow_records::*;
pub use flows::*;
pub use hosts::*;
pub use live::*;
pub use maps::*;
pub use patterns::*;
pub use scopes::*;
pub use verdicts::*;

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `repr(C)`, `Copy`, no implicit padding, every bit pattern is valid.
    unsafe impl aya::Pod for super::HostValue {}
    unsafe impl aya::Pod for super::HostSlot {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::InboundKey {}
    unsafe impl aya::Pod for super::InboundValue {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::DeniedEvent {}
    unsafe impl aya::Pod for super::FlowRecord {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::HostName {}
    unsafe impl aya::Pod for super::CgroupPath {}
    unsafe impl aya::Pod for super::PolicyRef {}
    unsafe impl aya::Pod for super::ScopeCache {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::ClientValue {}
    unsafe impl aya::Pod for super::PatternMasks {}
    unsafe impl aya::Pod for super::CaptureTarget {}
    unsafe impl aya::Pod for super::CapturedDest {}
    unsafe impl aya::Pod for super::LiveTcp {}
}
