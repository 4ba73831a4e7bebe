//! Ids: TypeIDs (`<prefix>_<26 base32>`) over UUIDs.

use std::{fmt, str::FromStr};

use type_safe_id::{StaticType, TypeSafeId};
use uuid::Uuid;

/// Defines an id newtype over a UUID, shown and parsed as a TypeID
/// (`<prefix>_<26 base32>`).
macro_rules! typeid {
    ($(#[$doc:meta])* $name:ident, $tag:ident, $prefix:literal) => {
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        struct $tag;

        impl StaticType for $tag {
            const TYPE: &'static str = $prefix;
        }

        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                TypeSafeId::from_type_and_uuid($tag, self.0).fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = type_safe_id::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let id: TypeSafeId<$tag> = s.parse()?;
                Ok(Self(id.uuid()))
            }
        }
    };
}

typeid!(
    /// The tenant a customer belongs to (`app_...`).
    AppId, AppTag, "app"
);

impl AppId {
    /// The app of the embedded development mode (created by the first
    /// migration).
    pub const DEFAULT: AppId = AppId(Uuid::nil());
}

typeid!(
    /// An API key's id, not the key itself (`key_...`).
    KeyId, KeyTag, "key"
);

impl KeyId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

typeid!(
    /// A customer's id: a UUIDv7, shown as a TypeID
    /// (`cus_01h2xcejqtf2nbrexx3vqjhp41`), so ids sort by creation.
    CustomerId, CustomerTag, "cus"
);

impl CustomerId {
    /// A new id; ids created later sort after ids created earlier.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

typeid!(
    /// A change event's id (`evt_...`): a UUIDv7.
    EventId, EventTag, "evt"
);

impl EventId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}
