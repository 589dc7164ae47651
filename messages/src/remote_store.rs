//! The embedded store served over the bus, for clusters without ScyllaDB. (Being written.)
