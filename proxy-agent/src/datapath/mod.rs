//! From the desired state to map contents and the ordered writes that get
//! the kernel there. Pure: the only I/O is behind [`crate::maps::LbMaps`].
mod apply;
pub mod ct_gc;
mod delta;
mod fit;
mod flows;
mod ids;
mod invariant;
mod plan;
mod render;
mod state;
mod view;

pub use apply::{apply, ApplyReport};
pub use delta::{delta, Delta};
pub use fit::{fit, Fitted, LeftOut};
pub use flows::{flows, FlowView};
pub use ids::{backend_ident, BackendIdent, Ids};
pub use invariant::check_invariant;
pub use plan::{plan, Op};
pub use render::{
    render, render_frontend, render_frontends, BackendUsers, Piece, RenderOutput, Slot, View,
};
pub use state::{MapState, SourceRangeEntry};
pub use view::{BackendView, CtFilterView, DeviceView, DumpView, FrontendView, MapEntries};
