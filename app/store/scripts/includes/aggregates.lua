-- The aggregates: every figure an order's parts add to, and the type of every key an op
-- names. The Python side names the same keys (app/store/operations.py).
--
-- FIGURES[part] lists {key name, field, amount, what} in the order a check reads them (the
-- first one past max_total is the one a rejection names). A key name is one of the op's
-- keys (for a product's figures, of the product entry first). A field '@user' or
-- '@product' is a sorted-set member: the op's user_id or the product id. amount is
-- 'cents', 'units' (the op's or product's) or 'orders' (1). what names the figure in a
-- rejection. when: the condition under which it is added (CONDITIONS in parts.lua);
-- mirror: a field kept as the total's decimal string, for readers of the seeds' layout.
local FIGURES = {
  user = {
    {'user', 'total_spend_cents', 'cents', "the user's spend", mirror = 'total_spend'},
    {'user', 'order_count', 'orders', "the user's order count"},
  },
  shard = {
    {'global', 'total_revenue_cents', 'cents', 'the total revenue', mirror = 'total_revenue'},
    {'global', 'total_orders', 'orders', 'the total order count'},
    {'spend', '@user', 'cents', "the user's spend"},
    {'orders', '@user', 'orders', "the user's order count"},
    {'day', 'total_orders', 'orders', "the day's order count"},
    {'day', 'total_revenue_cents', 'cents', "the day's revenue"},
    {'day', 'total_items_sold', 'units', "the day's items sold"},
    {'day_spend', '@user', 'cents', "the user's spend that day"},
    {'day_orders', '@user', 'orders', "the user's orders that day"},
    {'month_spend', '@user', 'cents', "the user's spend that month"},
    -- The month's order ranking doubles as its set of customers.
    {'month_orders', '@user', 'orders', "the user's orders that month"},
    {'month', 'total_orders', 'orders', "the month's order count"},
    {'month', 'total_revenue_cents', 'cents', "the month's revenue"},
    {'month', 'total_items_sold', 'units', "the month's items sold"},
    {'day', 'unique_customers', 'orders', "the day's customers", when = 'new_day_customer'},
    {'month', 'unique_customers', 'orders', "the month's customers",
     when = 'new_month_customer'},
  },
  -- One entry per product (lines of one product arrive merged), so 'orders' counts the
  -- order once however many lines.
  products = {
    {'product', 'units_sold', 'units', 'units sold'},
    {'product', 'revenue_cents', 'cents', 'revenue'},
    {'product', 'orders', 'orders', 'order count'},
    {'revenue', '@product', 'cents', 'revenue'},
    {'units', '@product', 'units', 'units sold'},
  },
}
-- Key name -> type, of each op kind: the figures' keys, and the keys no figure names.
local kinds = {
  claim = {order = 'string'},
  user = {days = 'hash', applied = 'zset'},
  shard = {customers = 'set', outcomes = 'hash', corrections = 'hash', applied = 'zset'},
  products = {applied = 'zset'},
  book = {outcomes = 'hash', index = 'zset', by_field = 'hash', lag = 'hash'},
}
for part, figures in pairs(FIGURES) do
  for _, f in ipairs(figures) do
    f.is_score = string.sub(f[2], 1, 1) == '@'
    kinds[part][f[1]] = f.is_score and 'zset' or 'hash'
  end
end
