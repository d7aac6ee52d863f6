//! pagestream-transport: the wire side of pagestream.
//!
//! * [`criu_ps`]: CRIU's page-server protocol as a sans-IO codec (bytes in, typed messages out).

pub mod criu_ps;
