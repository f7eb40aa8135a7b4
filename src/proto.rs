//! Code generated from `proto/` by `build.rs`: the device protocol and the router API.
//! The nesting mirrors the protobuf packages, which the generated code relies on.

#[allow(clippy::all, missing_docs)]
mod generated {
    pub mod device {
        pub mod v1 {
            tonic::include_proto!("longlink.device.v1");
        }
    }
    pub mod router {
        pub mod v1 {
            tonic::include_proto!("longlink.router.v1");
        }
    }
    pub mod store {
        pub mod v1 {
            tonic::include_proto!("longlink.store.v1");
        }
    }
}

pub use generated::device::v1 as device;
pub use generated::router::v1 as router;
pub use generated::store::v1 as store;
