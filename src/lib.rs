//! rqmgr: a drop-in replacement for Postfix's queue manager, qmgr(8).
