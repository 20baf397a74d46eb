//! https for local development: a local CA kept in proxyd's sled tree ([`ca`],
//! [`vault`]) and the names it may certify ([`names`]).

pub mod ca;
pub mod names;
pub mod vault;
