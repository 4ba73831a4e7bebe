// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (app_id, id) {
        app_id -> Uuid,
        id -> Uuid,
        prefix -> Text,
        secret_hash -> Bytea,
        create_time -> Timestamptz,
        expire_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    apps (id) {
        id -> Uuid,
        name -> Text,
        create_time -> Timestamptz,
    }
}

diesel::table! {
    customer_provider_ids (app_id, customer_id, provider) {
        app_id -> Uuid,
        customer_id -> Uuid,
        provider -> Text,
        provider_customer_id -> Text,
        active -> Bool,
    }
}

diesel::table! {
    customers (app_id, id) {
        app_id -> Uuid,
        id -> Uuid,
        external_id -> Nullable<Text>,
        email -> Nullable<Text>,
        name -> Nullable<Text>,
        phone -> Nullable<Text>,
        address_line1 -> Nullable<Text>,
        address_line2 -> Nullable<Text>,
        address_city -> Nullable<Text>,
        address_state -> Nullable<Text>,
        address_postal_code -> Nullable<Text>,
        address_country -> Nullable<Text>,
        timezone -> Nullable<Text>,
        metadata -> Jsonb,
        state -> Text,
        revision -> Int8,
        create_time -> Timestamptz,
        update_time -> Timestamptz,
        archive_time -> Nullable<Timestamptz>,
        delete_time -> Nullable<Timestamptz>,
        email_lower -> Nullable<Text>,
        provider_ids -> Jsonb,
    }
}

diesel::table! {
    customer_event_heads (app_id) {
        app_id -> Uuid,
        position -> Int8,
        pruned_through -> Int8,
        pruned_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    customer_events (app_id, seq) {
        app_id -> Uuid,
        seq -> Int8,
        position -> Nullable<Int8>,
        id -> Uuid,
        #[sql_name = "type"]
        kind -> Text,
        customer_id -> Uuid,
        customer -> Nullable<Jsonb>,
        changed_fields -> Array<Text>,
        key_id -> Nullable<Uuid>,
        create_time -> Timestamptz,
    }
}

diesel::joinable!(api_keys -> apps (app_id));
diesel::joinable!(customers -> apps (app_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    apps,
    customer_event_heads,
    customer_events,
    customer_provider_ids,
    customers,
);
