//! `portico explain`: what would happen to a request, without sending it.
