-- money(cents): the decimal string of a whole number of cents ('-12.05'), from the digits
-- rather than a division of doubles: exact for every total up to max_total.
local function money(cents)
  local sign = ''
  if cents < 0 then sign = '-'; cents = -cents end
  local digits = string.format('%03d', cents)
  return sign .. string.sub(digits, 1, -3) .. '.' .. string.sub(digits, -2)
end
